"""The inference engine: a trained model answering for images, and its exported forms."""
