"""cryoparticle: cryo-EM particle picking by semantic segmentation and dense CRFs."""

__version__ = "0.1.0"
