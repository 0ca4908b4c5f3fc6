"""s2seg Processing algorithms, one ``QgsProcessingAlgorithm`` per module."""
