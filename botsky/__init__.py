"""botsky: measure how well LLMs engage real people on the AT Protocol.

A randomized bot army replies to posts from the firehose and @-mentions one recommended online
user; botsky watches the firehose for that user's reply and scores every model.
"""

from botsky.errors import BotskyError
from botsky.events import Event

__all__ = ["BotskyError", "Event", "__version__"]

__version__ = "0.1.0"
