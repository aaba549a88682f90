"""A small Django shop that reports each paid order to Servoki through the relay."""
