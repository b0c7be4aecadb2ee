"""Train a spiking Conv-SNN on MNIST, evaluate it, count its operations and save it."""
import os

from snnfast import ConvSNN, datasets, energy
from snnfast.train import synthetic_digits

if os.environ.get("SNNFAST_EXAMPLES_SMALL") == "1":    # synthetic digits: seconds, no download
    X, y, X_test, y_test = synthetic_digits(1200, 200, seed=0)
else:
    X, y = datasets.load("mnist", "train")             # fetched once into ~/.cache/snnfast
    X_test, y_test = datasets.load("mnist", "test")
tr, va = datasets.train_val_split(len(X), 5000 if len(X) > 50000 else 100, seed=0)

model = ConvSNN(preset="default", seed=0, epochs=1)    # 15 epochs reach 99.1 %
model.fit(X[tr], y[tr], X[va], y[va], sample_ids=tr, val_ids=va)
print(model.evaluate(X_test, y_test))                  # accuracy, loss, spike rates

counts = energy.from_convsnn(model, X_test[:1000])     # exact NeuroBench operation counts
e = energy.energy_estimate(counts["SynapticOperations"], "horowitz45_fp32")
print(f"{e['snn_uJ']:.2f} uJ per inference ({e['preset']}, compute only)")
model.save("model.h5")                                 # ConvSNN.load("model.h5") reads it
