"""The Python client on the demo server: label from the queue, retrain, then read scores, representations
and predictions for new images. Run it beside `make demo` (see the README's "Python client")."""

from lenslab_client import Lenslab
from ml.data import by_eye_levels, make_shapes

lab = Lenslab()  # LENSLAB_URL (default http://127.0.0.1:8000) and LENSLAB_TOKEN
project = lab.find_project("shapes")
pid = project["id"]
sprites = make_shapes(n=project["n_items"], seed=0, size=32, rotation_range=0)  # the demo's sprites, drawn again
truth = by_eye_levels(sprites.factors)  # what an expert sees: shape, size and position of each sprite
for job in lab.jobs(pid):  # the demo's pretrain and first retrain, if they are still running
    if job["status"] in ("queued", "running"):
        lab.wait(job["id"])

for item in lab.queue(pid, limit=200):  # the queue's picks, each leased to us until labelled
    source = lab.item(item["item_id"])["source_index"]
    lab.label(item["item_id"], {name: str(levels[source]) for name, levels in truth.items()}, lease_id=item["lease_id"])

lab.wait(lab.start_job(pid, "retrain")["id"])
for job in lab.jobs(pid):  # the new version's scores
    if job["status"] in ("queued", "running"):
        lab.wait(job["id"])
point = lab.metrics(pid)[-1]  # the interpretability metric on the eval labels (the demo seeded 300)
print("scores:", {name: a["score"] for name, a in point["attributes"].items()}, "raw z:", point["baseline_overall"])

scores = lab.scores(pid, unlabelled=True)
print("label next:", scores.item_ids[:10])
frame = lab.frame(pid)  # one row per item: z, z*, predicted level and probabilities, score
print(frame.filter(like="shape").head())

new = make_shapes(n=5, seed=1, size=32, rotation_range=0)  # five sprites the project has never seen
out = lab.transform(pid, images=new.images)
print("predicted:", out.predictions["shape"]["level"].tolist(), "true:", by_eye_levels(new.factors)["shape"].tolist())
lab.export_labels(pid, "shapes-labels.csv")
