"""Sample grids drawn without torchvision: the same pixels as torchvision's, and no torchvision import in a trial."""

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from raygan.images import png_bytes, tile


@pytest.mark.parametrize("n, channels, nrow, padding, pad_value", [(7, 3, 3, 2, 0.0), (10, 1, 10, 1, 1.0), (5, 1, 8, 0, 0.5)])
def test_tile_matches_torchvision_make_grid(n, channels, nrow, padding, pad_value):
    images = torch.rand(n, channels, 6, 5, generator=torch.Generator().manual_seed(n))
    ours = tile(images, nrow=nrow, padding=padding, pad_value=pad_value)
    theirs = torchvision.utils.make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    assert ours.shape == (channels, *theirs.shape[1:])
    torch.testing.assert_close(ours, theirs[:channels], rtol=0, atol=0)


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_png_has_the_pixels_torchvision_save_image_writes(channels, mode):
    images = torch.rand(12, channels, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = Image.open(io.BytesIO(png_bytes(images, nrow=5, padding=1)))
    buffer = io.BytesIO()
    torchvision.utils.save_image(images, buffer, format="png", nrow=5, padding=1)
    theirs = np.asarray(Image.open(buffer))
    assert ours.mode == mode
    np.testing.assert_array_equal(np.asarray(ours).reshape(*theirs.shape[:2], channels), theirs[:, :, :channels])


def test_tile_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="non-empty"):
        tile(torch.zeros(0, 1, 4, 4))


def test_a_trial_process_does_not_import_torchvision():
    # torchvision's import holds ~90 MB of private memory in each of a run's processes.
    code = "import sys, raygan.trainable, raygan.evaluator; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
