"""Feature visualisation in a notebook, without Hydra or Lightning: one channel of EfficientNet-Lite0.

    python examples/render.py            # writes channel.png (256 steps; STEPS=20 for a quick look)
"""
import os

from torchvision.utils import save_image

from protoscope import render
from protoscope.models.builders import efficientnet_lite
from protoscope.objectives import Channel
from protoscope.regularizers import TotalVariation
from protoscope.generation.renderer import as_classifier, evaluate

# --- the user code: 9 lines ---------------------------------------------------------------------
steps = int(os.environ.get("STEPS", 256))
model = as_classifier(efficientnet_lite(), size=128, mean=[0.498, 0.498, 0.498], std=[0.502, 0.502, 0.502])
objective = Channel("_blocks.10", 7) + 0.1 * TotalVariation()
images = render(model, objective, steps=steps, param="fourier", transform="m")
save_image(images, "channel.png")
start = render(model, objective, steps=0, progress=False)
score = lambda x: -evaluate(model, Channel("_blocks.10", 7), x).item()  # noqa: E731
print(f"channel 7 of _blocks.10: {score(start):.3f} at the start, {score(images):.3f} after {steps} steps")
