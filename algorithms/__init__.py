"""s2seg Processing algorithms, one ``QgsProcessingAlgorithm`` per module; :mod:`.common` holds what they
share (base class, engine parameters, their ``EngineConfig``)."""
