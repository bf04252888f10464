"""The Python loops users would pick instead of trainloop, on the workloads of
bench/workloads.h: a plain loop, a torch.utils.data.DataLoader loop and
skorch's NeuralNetClassifier. They read what `loop_overhead export` wrote
(split, standardized tensors, every epoch's order, initial weights), so they
train the same model from the same weights on the same batches as the C++
implementations.

  workloads.py run --data DIR --workload w2 --impl plain --runs 3
  workloads.py pipeline --data DIR --repeats 5

Each prints one line `RESULT {json}` for bench/driver.py. Times are
time.monotonic(), the CLOCK_MONOTONIC the driver and the C++ side read.
"""
import time

T_MAIN = time.monotonic()  # before any import: the interpreter's start-up ends here

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Sampler, TensorDataset  # noqa: E402

# Mirrors bench/workloads.h spec_of.
WORKLOADS = {
    "w1": dict(data="digits.pt", init="mlp_init.pt", lenet=False, batch_size=0, shuffle=False,
               epochs=100, validate=False, validation_batch_size=0, adam=True, lr=0.01, momentum=0.0),
    "w2": dict(data="digits.pt", init="mlp_init.pt", lenet=False, batch_size=32, shuffle=True,
               epochs=20, validate=True, validation_batch_size=256, adam=True, lr=0.01, momentum=0.0),
    "w3": dict(data="fashion.pt", init="lenet_init.pt", lenet=True, batch_size=64, shuffle=True,
               epochs=1, validate=True, validation_batch_size=1000, adam=False, lr=0.01, momentum=0.9),
}


class MLP(nn.Sequential):
    """64-32-16-10 with ReLU: parameter names "0.weight", … as the C++ Sequential."""

    def __init__(self):
        super().__init__(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))


class LeNet(nn.Module):
    """examples/lenet.h, layer for layer."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def inputs_of(exported):
    """Exported images are bytes: floats in [0, 1] as workloads.h inputs_of makes them."""
    if exported.dtype == torch.uint8:
        return exported.to(torch.float32).div_(255)
    return exported


class Data:
    def __init__(self, directory, spec):
        saved = torch.load(f"{directory}/{spec['data']}")
        self.x_train, self.y_train = inputs_of(saved["x_train"]), saved["y_train"]
        self.x_test, self.y_test = inputs_of(saved["x_test"]), saved["y_test"]
        self.orders = saved["orders"]
        self.init = torch.load(f"{directory}/{spec['init']}")
        n = len(self.x_train)
        self.batch_size = spec["batch_size"] or n
        self.validation_batch_size = spec["validation_batch_size"] or len(self.x_test)


def make_model(spec, data):
    model = LeNet() if spec["lenet"] else MLP()
    model.load_state_dict(data.init)
    return model


def make_optimizer(spec, parameters):
    if spec["adam"]:
        return torch.optim.Adam(parameters, lr=spec["lr"])
    return torch.optim.SGD(parameters, lr=spec["lr"], momentum=spec["momentum"])


class EpochOrder(Sampler):
    """Serves the exported order of epoch 0, 1, 2, … on successive iterations
    (DataLoader and skorch iterate it once per epoch)."""

    def __init__(self, orders):
        self.orders = orders
        self.epoch = 0

    def __iter__(self):
        order = self.orders[self.epoch]
        self.epoch += 1
        return iter(order.tolist())

    def __len__(self):
        return self.orders.shape[1]


def plain(spec, data, model):
    """The hand-written C++ loop, op for op."""
    start, cpu_start = time.monotonic(), time.process_time()
    optimizer = make_optimizer(spec, model.parameters())
    n, bs, vbs = len(data.x_train), data.batch_size, data.validation_batch_size
    steps = 0

    def validate():
        with torch.no_grad():
            model.eval()
            m = len(data.x_test)
            correct = torch.zeros((), dtype=torch.long)
            loss_sum = torch.zeros((), dtype=torch.float64)
            for first in range(0, m, vbs):
                inputs = data.x_test.narrow(0, first, min(vbs, m - first))
                targets = data.y_test.narrow(0, first, min(vbs, m - first))
                outputs = model(inputs)
                loss_sum += F.cross_entropy(outputs, targets) * len(inputs)
                correct += outputs.argmax(1).eq(targets).sum()
            loss_sum.item()
            return correct.item() / m

    accuracy = train_loss = float("nan")
    for epoch in range(spec["epochs"]):
        model.train()
        order = data.orders[epoch] if spec["shuffle"] else None
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.long)
        for first in range(0, n, bs):
            length = min(bs, n - first)
            if order is not None:
                index = order.narrow(0, first, length)
                inputs = data.x_train.index_select(0, index)
                targets = data.y_train.index_select(0, index)
            else:
                inputs = data.x_train.narrow(0, first, length)
                targets = data.y_train.narrow(0, first, length)
            outputs = model(inputs)
            loss = F.cross_entropy(outputs, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * length
            correct += outputs.detach().argmax(1).eq(targets).sum()
            steps += 1
        train_loss = loss_sum.item() / n
        correct.item()
        if spec["validate"]:
            accuracy = validate()
    if not spec["validate"]:
        accuracy = validate()
    return dict(seconds=time.monotonic() - start, cpu_seconds=time.process_time() - cpu_start,
                test_accuracy=accuracy, train_loss=train_loss, steps=steps)


def with_data_loader(spec, data, model):
    """The same loop fed by DataLoader over a TensorDataset (no workers, the default)."""
    start, cpu_start = time.monotonic(), time.process_time()
    optimizer = make_optimizer(spec, model.parameters())
    n = len(data.x_train)
    sampler = EpochOrder(data.orders) if spec["shuffle"] else None
    train_loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=data.batch_size,
                              sampler=sampler)
    test_loader = DataLoader(TensorDataset(data.x_test, data.y_test),
                             batch_size=data.validation_batch_size)
    steps = 0

    def validate():
        with torch.no_grad():
            model.eval()
            correct = torch.zeros((), dtype=torch.long)
            loss_sum = torch.zeros((), dtype=torch.float64)
            for inputs, targets in test_loader:
                outputs = model(inputs)
                loss_sum += F.cross_entropy(outputs, targets) * len(inputs)
                correct += outputs.argmax(1).eq(targets).sum()
            loss_sum.item()
            return correct.item() / len(data.x_test)

    accuracy = train_loss = float("nan")
    for _ in range(spec["epochs"]):
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.long)
        for inputs, targets in train_loader:
            outputs = model(inputs)
            loss = F.cross_entropy(outputs, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(inputs)
            correct += outputs.detach().argmax(1).eq(targets).sum()
            steps += 1
        train_loss = loss_sum.item() / n
        correct.item()
        if spec["validate"]:
            accuracy = validate()
    if not spec["validate"]:
        accuracy = validate()
    return dict(seconds=time.monotonic() - start, cpu_seconds=time.process_time() - cpu_start,
                test_accuracy=accuracy, train_loss=train_loss, steps=steps)


def with_skorch(spec, data, model):
    """skorch's NeuralNetClassifier with its default callbacks (timer, loss and
    accuracy scoring, the printed table), the exported order as its sampler
    and the test set as its validation split."""
    from skorch import NeuralNetClassifier
    from skorch.dataset import Dataset

    # skorch.helper.predefined_split does this, but that module needs pandas.
    def predefined_split(valid):
        return lambda dataset, y=None, **kwargs: (dataset, valid)

    start, cpu_start = time.monotonic(), time.process_time()
    extra = {}
    if spec["shuffle"]:
        extra["iterator_train__sampler"] = EpochOrder(data.orders)
    net = NeuralNetClassifier(
        module=LeNet if spec["lenet"] else MLP,
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam if spec["adam"] else torch.optim.SGD,
        lr=spec["lr"],
        max_epochs=spec["epochs"],
        batch_size=spec["batch_size"] or -1,
        train_split=predefined_split(Dataset(data.x_test, data.y_test)) if spec["validate"] else None,
        iterator_train__shuffle=False,
        iterator_valid__batch_size=data.validation_batch_size,
        device="cpu",
        verbose=1,
        **({} if spec["adam"] else {"optimizer__momentum": spec["momentum"]}),
        **extra,
    )
    net.initialize()
    net.module_.load_state_dict(model.state_dict())  # the same initial weights
    net.partial_fit(data.x_train, data.y_train)
    if spec["validate"]:
        accuracy = float(net.history[-1, "valid_acc"])
    else:
        accuracy = float((torch.as_tensor(net.predict(data.x_test)) == data.y_test).double().mean())
    seconds, cpu_seconds = time.monotonic() - start, time.process_time() - cpu_start
    steps = sum(sum(1 for b in epoch["batches"] if "train_loss" in b) for epoch in net.history)
    return dict(seconds=seconds, cpu_seconds=cpu_seconds, test_accuracy=accuracy,
                train_loss=float(net.history[-1, "train_loss"]), steps=steps)


IMPLEMENTATIONS = {"plain": plain, "dataloader": with_data_loader, "skorch": with_skorch}


def warm_up(spec, data):
    """One untimed step of a throwaway model, as loop_overhead's warm_up."""
    model = make_model(spec, data)
    optimizer = make_optimizer(spec, model.parameters())
    length = min(data.batch_size, len(data.x_train))
    F.cross_entropy(model(data.x_train.narrow(0, 0, length)), data.y_train.narrow(0, 0, length)).backward()
    optimizer.step()
    with torch.no_grad():
        model(data.x_test.narrow(0, 0, min(data.validation_batch_size, len(data.x_test))))


def run(args):
    if args.impl == "skorch":
        import skorch  # noqa: F401  (its import, sklearn's included, is start-up cost)
    t_imported = time.monotonic()
    torch.set_num_threads(args.threads)
    spec = dict(WORKLOADS[args.workload])
    if args.epochs:
        spec["epochs"] = args.epochs
    data = Data(args.data, spec)
    t_loaded = time.monotonic()
    warm_up(spec, data)
    t_warm = time.monotonic()
    runs = []
    for _ in range(args.runs):
        model = make_model(spec, data)
        runs.append(IMPLEMENTATIONS[args.impl](spec, data, model))
    result = dict(impl=args.impl, workload=args.workload, threads=torch.get_num_threads(),
                  t_main=T_MAIN, t_imported=t_imported, t_loaded=t_loaded, t_warm=t_warm,
                  t_end=time.monotonic(),
                  peak_rss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, runs=runs)
    sys.stdout.flush()
    print("RESULT " + json.dumps(result), flush=True)


def pipeline(args):
    """Batches per second out of the same Fashion-MNIST tensors, shuffled in
    batches of 64: DataLoader(TensorDataset) against index_select."""
    torch.set_num_threads(args.threads)
    saved = torch.load(f"{args.data}/fashion.pt")
    x, y, orders = inputs_of(saved["x_train"]), saved["y_train"], saved["orders"]
    n, bs = len(x), args.batch_size

    def index_select(epoch):
        order = orders[epoch]
        count = 0
        for first in range(0, n, bs):
            index = order.narrow(0, first, min(bs, n - first))
            x.index_select(0, index), y.index_select(0, index)
            count += 1
        return count

    loader = DataLoader(TensorDataset(x, y), batch_size=bs, sampler=EpochOrder(orders))

    def data_loader(epoch):
        loader.sampler.epoch = epoch
        return sum(1 for _ in loader)

    ways = {"python_index_select": index_select, "python_dataloader": data_loader}
    rates = {name: [] for name in ways}
    cpu_rates = {name: [] for name in ways}
    for r in range(-1, args.repeats):  # -1: warm-up round
        for k in range(len(ways)):
            name = list(ways)[(k + max(r, 0)) % len(ways)]
            start, cpu_start = time.monotonic(), time.process_time()
            batches = ways[name](0)
            seconds, cpu_seconds = time.monotonic() - start, time.process_time() - cpu_start
            if r >= 0:
                rates[name].append(batches / seconds)
                cpu_rates[name].append(batches / cpu_seconds)
    print("RESULT " + json.dumps(dict(batch_size=bs, examples=n, rates=rates, cpu_rates=cpu_rates)),
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("--workload", default="w2", choices=sorted(WORKLOADS))
    run_parser.add_argument("--impl", default="plain", choices=sorted(IMPLEMENTATIONS))
    run_parser.add_argument("--runs", type=int, default=1)
    run_parser.add_argument("--epochs", type=int, default=0)
    pipeline_parser = sub.add_parser("pipeline")
    pipeline_parser.add_argument("--batch-size", type=int, default=64)
    pipeline_parser.add_argument("--repeats", type=int, default=5)
    for p in (run_parser, pipeline_parser):
        p.add_argument("--data", required=True)
        p.add_argument("--threads", type=int, default=1)
    sub.add_parser("noop")
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    elif args.command == "pipeline":
        pipeline(args)
    else:
        print("RESULT " + json.dumps(dict(t_main=T_MAIN, t_imported=time.monotonic())), flush=True)


if __name__ == "__main__":
    main()
