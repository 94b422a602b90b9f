"""Site pictures: one colour per named channel, per-channel percentile contrast, optional per-channel grid."""

import numpy as np
import pytest

from cloome_hf.channels import CHANNELS
from cloome_hf.inference.site_picture import site_picture, stretch_channel


def _one_lit(channel: int, size=8):
    image = np.zeros((5, size, size), dtype=np.uint8)
    image[channel, 2:5, 2:5] = 200
    return image


@pytest.mark.parametrize("name,rgb", [("Hoechst", (0, 0, 255)), ("ERSyto", (0, 255, 0)),
                                      ("Ph_golgi", (255, 0, 0)), ("Mito", (255, 0, 255))])
def test_a_channel_lit_alone_shows_its_colour(name, rgb):
    picture = site_picture(_one_lit(CHANNELS.index(name)), CHANNELS)
    assert picture.shape == (8, 8, 3) and picture.dtype == np.uint8
    assert tuple(picture[3, 3]) == rgb
    assert tuple(picture[0, 0]) == (0, 0, 0)


def test_jump_names_map_and_colours_override():
    jump = ["DNA", "ER", "RNA", "AGP", "Mito"]
    picture = site_picture(_one_lit(0), jump)  # DNA = Hoechst -> blue
    assert tuple(picture[3, 3]) == (0, 0, 255)
    picture = site_picture(_one_lit(0), jump, colours={"Hoechst": (1.0, 1.0, 1.0)})
    assert tuple(picture[3, 3]) == (255, 255, 255)
    with pytest.raises(ValueError, match="'Brightfield'"):
        site_picture(_one_lit(0), ["Brightfield", *jump[1:]])
    with pytest.raises(ValueError, match="4 names"):
        site_picture(_one_lit(0), jump[:4])


def test_percentile_clipping_ignores_a_hot_pixel():
    plane = np.tile(np.arange(100, dtype=np.float32), (100, 1))  # values 0..99, uniform
    plane[0, 0] = 1e6  # one hot pixel must not darken the rest
    out = stretch_channel(plane, (1.0, 99.0))
    lo, hi = np.percentile(plane, [1.0, 99.0])
    assert out[0, 0] == 1.0
    np.testing.assert_allclose(out[5, 50], (50 - lo) / (hi - lo), rtol=1e-5)
    assert out[5, 0] == 0.0 and out[5, 99] == 1.0
    with pytest.raises(ValueError, match="percentiles"):
        stretch_channel(plane, (50.0, 10.0))


def test_grid_has_the_composite_then_each_channel():
    image = np.zeros((5, 6, 6), dtype=np.uint16)
    image[0, :3] = 1000  # Mito top half
    image[4, 3:] = 1000  # Hoechst bottom half
    grid = site_picture(image, CHANNELS, grid=True)
    assert grid.shape == (6, 36, 3)
    np.testing.assert_array_equal(grid[:, :6], site_picture(image, CHANNELS))
    mito, hoechst = grid[:, 6:12], grid[:, 30:36]
    assert tuple(mito[0, 0]) == (255, 0, 255) and tuple(mito[5, 0]) == (0, 0, 0)
    assert tuple(hoechst[5, 0]) == (0, 0, 255) and tuple(hoechst[0, 0]) == (0, 0, 0)
    assert not grid[:, 12:30].any()  # the unlit channels are black
