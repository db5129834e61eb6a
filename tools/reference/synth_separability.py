"""How well the synthetic scenes' position questions can be answered from the pixels alone.

An upper-bound check for the demo model (README, "Demo model"): for each position question
("What anatomy is at the <cell> of the frame ?") it crops that cell of the frame, resized as the
model's processor would, describes the crop with a few hand-made features (colour and
chromaticity statistics, gradient energy across and along each axis, ring energies of the
spectrum) and fits a gradient-boosted classifier on the frames of the first 80% of the images;
it prints the accuracy on the other 20%, overall and per class. A high figure says the answer is in
the pixels at that resolution, so a model that scores lower is limited by what it has learnt, not
by the data.

    anatomy synth --out /tmp/sep --count 1500 --seed 1 --holdout-fraction 0 --size 224 \
        --per-image 2 --balance --forms position --all-options
    pip install numpy pillow scikit-learn
    python3 tools/reference/synth_separability.py /tmp/sep/train.json --res 112 168 224
"""

import argparse
import json
import os

import numpy as np
from PIL import Image
from sklearn.ensemble import HistGradientBoostingClassifier

CELLS = [
    "top-left", "top-mid", "top-right",
    "mid-left", "center", "mid-right",
    "bottom-left", "bottom-mid", "bottom-right",
]


def features(crop):
    x = crop.astype(np.float32)
    # Chromaticity is unchanged by the light's falloff, which scales all three channels alike.
    chroma = x / (x.sum(2, keepdims=True) + 1.0)
    f = []
    for a in (x, chroma):
        px = a.reshape(-1, 3)
        f += list(px.mean(0)) + list(px.std(0))
        f += list(np.percentile(px, [10, 50, 90], axis=0).ravel())
    g = x.mean(2)
    gx = np.abs(np.diff(g, axis=1)).mean()
    gy = np.abs(np.diff(g, axis=0)).mean()
    f += [gx, gy, gx / (gy + 1e-3)]
    spectrum = np.abs(np.fft.fft2(g - g.mean()))
    n = g.shape[0]
    fy, fx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    r = np.sqrt(fx**2 + fy**2)
    for lo, hi in [(0, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.5), (0.5, 1)]:
        m = (r >= lo) & (r < hi)
        f.append(spectrum[m].mean() if m.any() else 0.0)
    across = spectrum[np.abs(fy) > np.abs(fx)].mean()
    along = spectrum[np.abs(fx) > np.abs(fy)].mean()
    f.append(across / (along + 1e-3))
    return f


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("questions", help="an `anatomy synth` questions file (Anatomy-R1 JSON)")
    ap.add_argument("--res", type=int, nargs="+", default=[168], help="square sizes to resize to")
    args = ap.parse_args()
    root = os.path.dirname(os.path.abspath(args.questions))
    records = [r for r in json.load(open(args.questions)) if r.get("form") == "position"]
    if not records:
        raise SystemExit(f"{args.questions}: no position questions")
    for res in args.res:
        xs, ys, groups, frames = [], [], [], {}
        for r in records:
            question = r["instruction"].split("Question:\n")[1].split("\n")[0]
            cell = next(i for i, c in enumerate(CELLS) if f" {c} " in question)
            path = r["images"]
            if path not in frames:
                img = Image.open(os.path.join(root, path)).convert("RGB")
                frames[path] = np.asarray(img.resize((res, res), Image.BICUBIC))
            c = res // 3
            row, col = divmod(cell, 3)
            xs.append(features(frames[path][row * c:(row + 1) * c, col * c:(col + 1) * c]))
            ys.append(r["answer"])
            groups.append(path)
        xs, ys, groups = np.array(xs), np.array(ys), np.array(groups)
        images = sorted(set(groups))
        held = set(images[int(0.8 * len(images)):])
        test = np.array([g in held for g in groups])
        clf = HistGradientBoostingClassifier(max_iter=300, random_state=0)
        pred = clf.fit(xs[~test], ys[~test]).predict(xs[test])
        print(f"{res}x{res}: accuracy {(pred == ys[test]).mean():.3f} on {test.sum()} questions "
              f"({len(held)} frames never fitted)")
        for k in sorted(set(ys)):
            m = ys[test] == k
            print(f"  {k:<22} {(pred[m] == k).mean():.3f} ({m.sum()})")


if __name__ == "__main__":
    main()
