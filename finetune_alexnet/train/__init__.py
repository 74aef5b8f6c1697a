"""The training engine: the graph, its inputs, what a run writes while it learns."""
