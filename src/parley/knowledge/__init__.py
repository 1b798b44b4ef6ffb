"""Knowledge: collections of documents, ingestion, embedders and hybrid retrieval."""
