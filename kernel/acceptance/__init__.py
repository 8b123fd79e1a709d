"""``teelab doctor --acceptance``: the whole path a hardware user needs, walked once, with a report to attach."""
