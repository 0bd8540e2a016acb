"""The Python client on the demo server: label from the queue, retrain, then read scores, representations
and predictions for new images. Run it beside `make demo` (see the README's "Python client")."""

from sklearn.datasets import load_digits

from lenslab_client import Lenslab

truth = load_digits()  # the demo's images; their digits stand in for an expert's answers
lab = Lenslab()  # LENSLAB_URL (default http://127.0.0.1:8000) and LENSLAB_TOKEN
project = lab.find_project("digits")
pid = project["id"]
for job in lab.jobs(pid):  # the demo's pretrain, if it is still running
    if job["status"] in ("queued", "running"):
        lab.wait(job["id"])

for item in lab.queue(pid, limit=500):  # the queue's picks, each leased to us until labelled
    source = lab.item(item["item_id"])["source_index"]
    lab.label(item["item_id"], {"digit": str(truth.target[source])}, lease_id=item["lease_id"])

lab.wait(lab.start_job(pid, "retrain")["id"])
for job in lab.jobs(pid):  # the new version's scores
    if job["status"] in ("queued", "running"):
        lab.wait(job["id"])
point = lab.metrics(pid)[-1]  # the interpretability metric on the eval labels (a tenth of what the queue hands out)
print("scores:", {name: a["score"] for name, a in point["attributes"].items()}, "raw z:", point["baseline_overall"])

scores = lab.scores(pid, unlabelled=True)
print("label next:", scores.item_ids[:10])
frame = lab.frame(pid)  # one row per item: z, z*, predicted level and probabilities, score
print(frame.filter(like="digit").head())

new = truth.images[-5:, None] / 16.0  # five images as (N, 1, 8, 8) in [0, 1]
out = lab.transform(pid, images=new)
print("predicted:", out.predictions["digit"]["level"].tolist(), "true:", truth.target[-5:].tolist())
lab.export_labels(pid, "digits-labels.csv")
