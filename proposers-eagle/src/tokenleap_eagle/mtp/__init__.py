"""Multi-token-prediction layers a target checkpoint carries (MiMo, DeepSeek-V3 naming), drafting as method "mtp"."""
