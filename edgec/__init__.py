"""edgec: an ahead-of-time compiler that puts Hugging Face causal LMs on devices."""
__version__ = "0.1.0"
