"""vlpretrain: compact, data-efficient vision-language pretraining."""
