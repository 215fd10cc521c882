"""vmm models: VideoMamba encoders, the multimodal VideoMamba-BERT model, registry and checkpoint loading."""
