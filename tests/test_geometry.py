import itertools

import pytest

from audioldm_tiled.geometry import plan_tiles


@pytest.mark.parametrize("multiple", [1, 8])
def test_cores_cover_every_frame_once_and_extents_hold_the_halo(multiple):
    for length, tile, halo in itertools.product(range(1, 70), [1, 2, 3, 7, 8, 16, 33], [0, 1, 5]):
        tiles = plan_tiles(length, tile, halo, multiple)
        assert tiles[0].core_start == 0 and tiles[-1].core_stop == length
        for a, b in zip(tiles, tiles[1:]):
            assert a.core_stop == b.core_start
        for t in tiles:
            assert t.core_length >= 1
            assert t.start == max(0, t.core_start - halo) and t.stop == min(length, t.core_stop + halo)
        sizes = [t.core_length for t in tiles]
        if multiple == 1:
            assert max(sizes) - min(sizes) <= 1, "balanced: no tiny remainder tile"
            assert max(sizes) <= tile
        else:
            assert all(t.core_start % multiple == 0 for t in tiles)


def test_one_tile_when_tile_covers_length():
    assert len(plan_tiles(10, 10)) == 1
    assert len(plan_tiles(10, 50, halo=4)) == 1
    assert len(plan_tiles(11, 10)) == 2


def test_fixed_extent_windows_have_equal_length_and_stay_inside():
    for length in range(256, 2000, 37):
        tiles = plan_tiles(length, 160, halo=48, multiple=8, fixed_extent=True)
        assert {t.length for t in tiles} == {256}
        assert tiles[-1].stop == length and tiles[0].start == 0
        for t in tiles:
            assert t.start <= t.core_start and t.core_stop <= t.stop


@pytest.mark.parametrize("bad", [dict(length=0, tile=4), dict(length=5, tile=0), dict(length=5, tile=2, halo=-1)])
def test_bad_arguments_raise(bad):
    with pytest.raises(ValueError):
        plan_tiles(**bad)
