"""The later recipes (MultiAugs, SSPCM) and their occlusions: what each augmentation changes and leaves, what
carries a target, and where the gradient goes."""
import torch

from collapse.draws import Draws
from collapse.occlude import beta, cutmix_holes, cutout_holes, joint_cut_occlusion, mixup, occlude
from test_methods import _grad_norm, _setup


def _images(b=6, h=64, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) + 0.5  # never 0: the fill value tells occluded pixels apart


def _joints(b=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([8 + 32 * torch.rand(b, 17, generator=g), 8 + 48 * torch.rand(b, 17, generator=g)], -1)


def test_cutout_blanks_boxes_and_leaves_every_other_pixel():
    x = _images()
    y = cutout_holes(x, Draws(torch.Generator().manual_seed(0)), holes=5)
    hit = (y == 0).all(1)
    assert torch.equal(y[:, :, ~hit[0]][0], x[:, :, ~hit[0]][0])  # untouched outside its boxes
    assert torch.equal(torch.where(hit[:, None], x, y), x) and 0 < hit.float().mean() < 0.8
    # boxes are 20-38 px at 256 rows: 5-9.5 px here, so no hole is smaller than 4 x 4 pixels
    assert (hit.sum((1, 2)) >= 16).all()


def test_cutmix_fills_boxes_from_one_partner_at_the_same_place():
    x = _images()
    y = cutmix_holes(x, Draws(torch.Generator().manual_seed(0)), holes=2)
    for i in range(len(x)):
        changed = (y[i] != x[i]).any(0)
        if not changed.any():
            continue  # its partner is itself
        partners = [j for j in range(len(x)) if torch.equal(y[i][:, changed], x[j][:, changed])]
        assert partners and torch.equal(y[i][:, ~changed], x[i][:, ~changed])


def test_joint_cut_occlusion_pastes_a_source_patch_and_keeps_the_rest():
    x, joints = _images(), _joints()
    joints[::2, :, 0] = joints[::2, :, 0].round() % 2 * 47  # half the images' joints on their left or right edge:
    draws = Draws(torch.Generator().manual_seed(3))          # patches taken there leave their source image
    y = joint_cut_occlusion(x, joints, draws, pairs=1)
    assert (y == 0).all(1).any()  # the pixels a patch brings from outside its source: the fill (images are never 0)
    found_count = []
    for i in range(len(x)):
        changed = (y[i] != x[i]).any(0)
        assert changed.any()
        ys, xs = torch.nonzero(changed, as_tuple=True)
        assert torch.equal(y[i][:, ~changed], x[i][:, ~changed])
        # the pasted block is one shifted copy of some image's pixels, zeros exactly where the shift leaves that
        # image: every window of each image padded with zeros is a candidate, and one must match it all
        block = y[i][:, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        h, w = block.shape[1:]
        found = False
        for j in range(len(x)):
            padded = torch.nn.functional.pad(x[j], (48, 48, 64, 64))
            windows = padded.unfold(1, h, 1).unfold(2, w, 1)              # (C, H', W', h, w)
            if (windows == block[:, None, None]).all(-1).all(-1).all(0).any():
                found = True
                break
        found_count.append(found)
    assert sum(found_count) == len(x)


def test_mixup_keeps_three_quarters_at_least_and_beta_is_u_shaped():
    draws = Draws(torch.Generator().manual_seed(0))
    lams = torch.stack([beta(draws, 0.2) for _ in range(4000)])
    assert ((lams >= 0) & (lams <= 1)).all() and abs(lams.mean() - 0.5) < 0.03
    assert ((lams < 0.1) | (lams > 0.9)).float().mean() > 0.6   # Beta(0.2, 0.2) puts ~2/3 of its mass there
    x = _images()
    y = mixup(x, Draws(torch.Generator().manual_seed(1)))
    keep = ((y - x).abs().amax() / (x.amax() - x.amin()))
    assert keep <= 0.25 + 1e-6


def test_every_path_changes_only_pixels_and_is_reproducible():
    from collapse.methods.later import MultiAugsSettings
    s = MultiAugsSettings()
    x, joints = _images(), _joints()
    for path in ("jc", "jo", "co", "cm", "mu", "joco", "jccm"):
        a = occlude(path, x, joints, Draws(torch.Generator().manual_seed(5)), s)
        b = occlude(path, x, joints, Draws(torch.Generator().manual_seed(5)), s)
        assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x), path


def test_multi_augs_targets_ignore_the_occlusion_and_the_gradient_reaches_only_students(synth_root):
    m, ctx, unl = _setup(synth_root, name="multi_augs", nets=2, paths="[joco,jccm]")
    seen = []
    original = m.target
    m.target = lambda *a: seen.append((a[1], original(*a))) or seen[-1][1]
    terms = m.unsupervised(ctx, unl)
    assert set(terms) == {"unsup0", "unsup1"} and len(seen) == 2
    for teacher, (target, field) in seen:
        assert not teacher.requires_grad and not target.requires_grad and target.abs().sum() > 0
    # the target is the partner's easy-view heatmap carried into the hard frame: occlusion never changes it
    terms["unsup0"].backward()
    assert _grad_norm(ctx.nets[0]) > 0 and _grad_norm(ctx.nets[1]) == 0
    m1, ctx1, unl1 = _setup(synth_root, name="multi_augs", nets=1, paths="[jc,jo,joco,jccm]")
    assert m1.nets == 1 and m1.sup_weight == 1.0 and m.sup_weight == 0.5
    loss = m1.unsupervised(ctx1, unl1)["unsup"]
    loss.backward()
    assert _grad_norm(ctx1.nets[0]) > 0


def test_multi_augs_paths_share_one_affine_and_one_target(synth_root):
    m, ctx, unl = _setup(synth_root, name="multi_augs", nets=1, paths="[co,co,co]")
    frames = []
    original = m.target
    m.target = lambda ctx_, heat, tv, sv: frames.append(sv.A) or original(ctx_, heat, tv, sv)
    images = []
    h = ctx.nets[0].register_forward_pre_hook(lambda mod, args: images.append(args[0]))
    m.unsupervised(ctx, unl)
    h.remove()
    assert len(frames) == 1                  # one transport for every path
    teacher, *students = images
    assert len(students) == 3
    # same affine: where no path occluded, the three hard views agree pixel for pixel
    a, b, c = students
    same = (a == b).all(1) & (b == c).all(1)
    assert same.float().mean() > 0.5 and not torch.equal(a, b)


def test_sspcm_corrects_each_joint_with_the_closest_pair():
    from collapse.methods.later import SSPCM, SSPCMSettings
    m = SSPCM(SSPCMSettings(name="sspcm"))

    def heat(cells):  # one peak per joint at (x, y) cells, 2 joints
        h = torch.zeros(1, 2, 8, 8)
        for j, (x, y) in enumerate(cells):
            h[0, j, y, x] = 1.0
        return h
    h1, h2 = heat([(1, 1), (4, 4)]), heat([(6, 6), (4, 5)])
    p1, p2 = heat([(6, 5), (0, 0)]), heat([(0, 0), (7, 7)])
    target, which = m.corrected(h1, h2, p1, p2)
    # joint 0: (h1,h2) 7.1, (p1,h2) 1.0, (h1,p2) 1.4, (p1,p2) 7.8 -> (p1, h2); joint 1: (h1,h2) 1.0 ties nothing -> current
    assert which.tolist() == [[1, 0]]
    assert torch.equal(target[0, 0], 0.5 * (p1[0, 0] + h2[0, 0])) and torch.equal(target[0, 1], 0.5 * (h1[0, 1] + h2[0, 1]))
    _, which = m.corrected(h1, h1, h1, h1)  # all pairs at distance 0: the current pair wins the tie
    assert (which == 0).all()


def test_sspcm_student_learns_only_from_the_corrected_target(synth_root):
    m, ctx, unl = _setup(synth_root, name="sspcm", score_filter=-1.0)  # every joint kept: where does gradient go
    terms = m.unsupervised(ctx, unl)
    assert {"unsup0", "unsup1", "unsup2", "stat/kept"} <= set(terms) and float(terms["stat/kept"]) == 1.0
    terms["unsup0"].backward(retain_graph=True)
    assert _grad_norm(ctx.nets[0]) > 0 and _grad_norm(ctx.nets[1]) == 0 and _grad_norm(ctx.nets[2]) == 0
    assert all(p.grad is None for net in m.earlier for p in net.parameters())
    for net in ctx.nets:
        net.zero_grad(set_to_none=True)
    terms["unsup1"].backward()
    assert _grad_norm(ctx.nets[1]) > 0 and _grad_norm(ctx.nets[0]) == 0 and _grad_norm(ctx.nets[2]) == 0


def test_sspcm_filters_joints_below_the_score_and_refreshes_its_earlier_teachers(synth_root):
    m, ctx, unl = _setup(synth_root, name="sspcm", score_filter=2.0)  # no peak reaches 2: nothing kept
    terms = m.unsupervised(ctx, unl)
    assert float(terms["stat/kept"]) == 0 and all(float(terms[f"unsup{i}"].detach()) == 0 for i in range(3))
    with torch.no_grad():
        for p in ctx.nets[1].parameters():
            p.add_(1.0)
    m.period, ctx.step = 3, 1
    m.after_step(ctx)  # step 2 done: not yet
    assert not torch.equal(next(m.earlier[0].parameters()), next(ctx.nets[1].parameters()))
    ctx.step = 2
    m.after_step(ctx)  # step 3 done: the earlier copies become the current teachers
    assert all(torch.equal(a, b) for a, b in zip(m.earlier[0].state_dict().values(), ctx.nets[1].state_dict().values()))


def test_labels_name_the_variant_from_a_config_or_a_results_table():
    from analysis.results import method_label
    assert method_label({"method.name": "multi_augs", "method.nets": 2, "method.paths": ["joco", "jccm"]}) == \
        "multi_augs (dual, joco+jccm)"
    assert method_label({"method.name": "multi_augs", "method.nets": 1, "method.paths": "['jc', 'jo']"}) == \
        "multi_augs (single, jc+jo)"
    assert method_label({"method.name": "sspcm", "method.score_filter": 0.1}) == "sspcm"


def test_sspcm_average_ablation_teaches_the_plain_average_without_earlier_copies(synth_root):
    m, ctx, unl = _setup(synth_root, name="sspcm", correction="average", score_filter=-1.0)
    calls = []
    for net in m.earlier:
        net.register_forward_hook(lambda mod, i, o: calls.append(1))
    seen = []
    original = m.target
    m.target = lambda ctx_, heat, tv, sv: seen.append(heat) or original(ctx_, heat, tv, sv)
    heats = []
    hooks = [ctx.nets[i].register_forward_hook(lambda mod, i, o: heats.append(o.detach())) for i in (1, 2)]
    terms = m.unsupervised(ctx, unl)
    for h in hooks:
        h.remove()
    assert calls == [] and float(terms["stat/earlier_pair"]) == 0       # the earlier copies never ran
    h1, h2 = heats[0].float(), heats[1].float()                         # the teachers' easy-view passes
    assert torch.allclose(seen[0], 0.5 * (h1 + h2))                     # the student's target before transport
    from collapse.methods.later import SSPCM
    assert SSPCM.label({"name": "sspcm", "correction": "average"}) == "sspcm (average target)"
