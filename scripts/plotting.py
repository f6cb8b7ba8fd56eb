"""plotting: what the plot scripts share: a figure written whole or not at all."""
import os


def save_png(fig, out, dpi):
    """Write fig as a PNG to a temporary file beside out, then rename it to out: out is the whole
    picture or absent (an old one left as it was). An OSError (a missing folder, a full disk) is
    raised after the temporary file is removed."""
    directory = os.path.dirname(os.path.abspath(out))
    tmp = os.path.join(directory, f".{os.path.basename(out)}.tmp.{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
