__version__ = "0.1.0"
"fastai's bear classifier, from web search to a Voila page and a JSON service."
# Hand-kept (nbdev only manages the version line above).
# torch 2.14 warns on import of every library that still uses torch.jit.script (timm, fastai);
# it is noise for the people running our console commands.
import warnings as _w
_w.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)
