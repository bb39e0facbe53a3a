"""tokfilter.training.pretrain: the small GPT (model), its fused loss (ops), the target tokenizer (tokenizer), masked pretraining (train) and held-out evaluation (evaluate)."""
