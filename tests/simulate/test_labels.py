import torch

from cryoparticle.simulate.labels import binary_closing, instance_map, paste_sum, particle_masks


def test_paste_sum_places_box_centre_at_x_column_y_row_and_cuts_at_edges():
    box = torch.zeros(1, 5, 5)
    box[0, 2, 2] = 1.0  # box centre
    box[0, 2, 4] = 2.0  # two pixels to the right of the centre
    img = paste_sum(box, torch.tensor([[7, 3]]), 10, 12)  # x = 7 (column), y = 3 (row)
    assert img[3, 7] == 1.0 and img[3, 9] == 2.0 and img.sum() == 3.0
    cut = paste_sum(box.repeat(2, 1, 1), torch.tensor([[11, 0], [11, 0]]), 10, 12)
    assert cut[0, 11] == 2.0 and cut.sum() == 2.0  # right part falls outside


def test_particle_mask_threshold_relative_to_each_particle():
    proj = torch.zeros(2, 9, 9)
    proj[0, 3:6, 3:6] = 1.0
    proj[1, 3:6, 3:6] = 100.0
    proj[:, 4, 4] *= 2
    m = particle_masks(proj, threshold_fraction=0.25, closing_radius_px=0)
    assert m[0].sum() == 9 and m[1].sum() == 9  # the same shape whatever the brightness


def test_closing_fills_a_one_pixel_gap():
    m = torch.zeros(1, 9, 9, dtype=torch.bool)
    m[0, 2:7, 2:7] = True
    m[0, 4, 4] = False
    closed = binary_closing(m, 1)
    assert closed[0, 4, 4] and closed[0].sum() == 25


def test_instance_map_ids_and_overlap_rule():
    masks = torch.ones(2, 3, 3, dtype=torch.bool)
    inst = instance_map(masks, torch.tensor([[2, 2], [3, 2]]), 6, 6)
    assert inst[2, 1] == 1 and inst[2, 4] == 2 and inst[2, 2] == 2  # later particle wins
    assert inst.dtype == torch.int32 and (inst > 0).sum() == 12
