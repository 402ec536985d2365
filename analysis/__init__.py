"""Analysis of how a model handles negation: embeddings of captions and their negations, UMAP maps,
per-layer probes of the text encoder and the plotly figures that show them."""
