"""edgec: an ahead-of-time compiler that puts Hugging Face causal LMs on devices.

    import edgec
    path = edgec.build(output="build/smollm2")       # the embedded default model
    model = edgec.load(path)
    ids = model.tokenizer("The capital of France is")["input_ids"]
    print(model.tokenizer.decode(model.generate(ids, max_new_tokens=16)))
    print(edgec.evaluate(path).perplexity)            # WikiText-2, KL vs the source model
"""
__version__ = "0.1.0"

from .errors import ArtifactError, EdgecError, UnsupportedModelError  # noqa: E402
from .eval import EvalResult, evaluate  # noqa: E402
from .pipeline import build  # noqa: E402
from .runtime import CompiledModel, load  # noqa: E402

__all__ = ["ArtifactError", "CompiledModel", "EdgecError", "EvalResult", "UnsupportedModelError", "build",
           "evaluate", "load", "__version__"]
