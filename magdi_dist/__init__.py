"""magdi-dist: distil multi-agent interaction graphs (MAGDi) into one student LM, at cluster scale."""

__version__ = "0.1.0"
