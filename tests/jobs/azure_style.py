"""An Azure ML v1 training script, ported by changing its import only: logs with every
kind of the in-script API, then raises `--fail` (FileNotFoundError) if asked."""
import argparse
import base64
import os
import tempfile

from tfsubmit import Run  # was: from azureml.core.run import Run

# A 1x1 PNG, so the script needs no imaging library.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAE"
                       "hQGAhKmMIQAAAABJRU5ErkJggg==")


class Figure:
    """Stands for a matplotlib figure: log_image(plot=...) calls its savefig."""

    def savefig(self, path, format=None):
        with open(path, "wb") as handle:
            handle.write(PNG)


parser = argparse.ArgumentParser()
parser.add_argument("--data-folder", default=None)
parser.add_argument("--fail", default=None)
args = parser.parse_args()

run = Run.get_context()
print(f"context {run!r}", flush=True)
run.log("final_acc", 0.91)
for loss in (0.5, 0.4, 0.3):
    run.log("loss", loss)
run.log("optimizer", "adam")
run.log_list("accuracies", [0.7, 0.8, 0.9])
run.log_row("Y over X", x=1, y=0.4)
run.log_row("Y over X", x=2, y=0.3)
run.log_table("confusion", {"label": ["cat", "dog"], "count": [3, 4]})
run.tag("team", "vision")
run.set_tags({"stage": "dev", "flagged": None})
run.add_properties({"dataset": "synthetic-v1"})
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "sample.png")
    with open(path, "wb") as handle:
        handle.write(PNG)
    run.log_image("sample", path=path)
run.log_image("curve", plot=Figure())
print(f"tags {sorted(run.get_tags().items())}", flush=True)
if args.data_folder:
    print(f"data files {sorted(os.listdir(args.data_folder))}", flush=True)
if args.fail:
    raise FileNotFoundError(f"dataset not found: {args.fail}")
