"""The peer a user would pick instead: the same AlexNet fine-tuned in PyTorch on the CPU.

Same layers as alexnet.py (groups, Caffe's LRN, the same shapes), in PyTorch's own NCHW layout, so
the benchmark compares two frameworks on one network rather than two networks. `load_layers` copies
weights in the `bvlc_alexnet.npy` layout ({layer: {'weights', 'biases'}}, TensorFlow's HWIO/[in, out])
into it; bench.py's equality check (`--only check/*`) compares the peer's logits and one SGD step
with our graph's on the same weights.

PyTorch is a benchmark-only dependency: nothing in the toolkit imports this module, and bench.py
skips the PyTorch rows with a note when torch is not installed.
"""
import numpy as np
import torch
from torch import nn

CONV_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
FC_LAYERS = ('fc6', 'fc7', 'fc8')


class AlexNet(nn.Module):
    """conv1 11x11/4 96 VALID, LRN, pool 3/2; conv2 5x5 256 groups 2; conv3-5 3x3; fc6-fc8."""

    def __init__(self, num_classes, dropout_rate=0.5):
        super().__init__()
        # Caffe's LRN: x / (k + alpha/n * sum of n=5 squares)^beta. PyTorch divides alpha by n itself,
        # so the Caffe numbers go in as they are (TensorFlow's op needs alpha/5 instead).
        def lrn():
            return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)

        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2, groups=2)   # SAME for 5x5, stride 1
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1, groups=2)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1, groups=2)
        self.features = nn.Sequential(
            self.conv1, nn.ReLU(inplace=True), lrn(), nn.MaxPool2d(3, 2),
            self.conv2, nn.ReLU(inplace=True), lrn(), nn.MaxPool2d(3, 2),
            self.conv3, nn.ReLU(inplace=True),
            self.conv4, nn.ReLU(inplace=True),
            self.conv5, nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.fc6 = nn.Linear(9216, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        self.classifier = nn.Sequential(
            self.fc6, nn.ReLU(inplace=True), nn.Dropout(dropout_rate),
            self.fc7, nn.ReLU(inplace=True), nn.Dropout(dropout_rate),
            self.fc8)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))

    def freeze(self, train_layers):
        """requires_grad only on `train_layers`: autograd then skips the frozen layers' backward."""
        for name in CONV_LAYERS + FC_LAYERS:
            for parameter in getattr(self, name).parameters():
                parameter.requires_grad_(name in train_layers)
        return [p for p in self.parameters() if p.requires_grad]


def load_layers(model, layers):
    """Copy {layer: {'weights', 'biases'}} in bvlc_alexnet.npy's layout into the PyTorch model.

    Layers absent from `layers` keep their fresh values (a new fc8, as finetune.py's --skip_layers fc8).
    """
    def weights(name):
        array = layers[name]['weights']
        if name in CONV_LAYERS:
            # HWIO -> OIHW; the groups split the same way in both (first half of filters, first
            # half of the input channels).
            return array.transpose(3, 2, 0, 1)
        if name == 'fc6':
            # fc6's rows are pool5 flattened in (h, w, c) order (TensorFlow's NHWC); PyTorch
            # flattens (c, h, w). Reordering the rows once here costs nothing per step, unlike a
            # permute of pool5 in every forward pass.
            return array.reshape(6, 6, 256, -1).transpose(3, 2, 0, 1).reshape(-1, 9216)
        return array.T

    with torch.no_grad():
        for name in CONV_LAYERS + FC_LAYERS:
            if name in layers:
                layer = getattr(model, name)
                layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weights(name))))
                layer.bias.copy_(torch.from_numpy(layers[name]['biases']))
    return model


def to_nchw(images_nhwc):
    """A contiguous NCHW tensor from NHWC float32 images, as a PyTorch data loader would give it."""
    return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def train_step_fn(model, train_layers, images_nhwc, labels_onehot, learning_rate=0.001):
    """A function running one SGD step on the fixed batch: the plain PyTorch fine-tuning loop."""
    parameters = model.freeze(train_layers)
    optimizer = torch.optim.SGD(parameters, lr=learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    images = to_nchw(images_nhwc)
    targets = torch.from_numpy(np.argmax(labels_onehot, axis=1))
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), targets)
        loss.backward()
        optimizer.step()
        return loss
    return step


def inference_fn(model, images_nhwc):
    """A function running the forward pass on the fixed batch, as a deployed model would."""
    images = to_nchw(images_nhwc)
    model.eval()

    def forward():
        with torch.inference_mode():
            return model(images)
    return forward
