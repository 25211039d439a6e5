"""Classification evaluator: accuracy, error, macro F1, in Dassl's printed block."""
from collections import OrderedDict, defaultdict

import numpy as np


def macro_f1(y_true, y_pred):
    """sklearn's `f1_score(average="macro", labels=unique(y_true))`, in percent."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for label in np.unique(y_true):
        tp = np.sum((y_pred == label) & (y_true == label))
        fp = np.sum((y_pred == label) & (y_true != label))
        fn = np.sum((y_pred != label) & (y_true == label))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return 100.0 * float(np.mean(scores)) if scores else 0.0


class Classification:
    """Accumulates argmax predictions; `evaluate()` prints the result block."""

    def __init__(self, lab2cname=None, per_class_result=False):
        self.lab2cname = lab2cname or {}
        self.per_class_result = per_class_result
        self.reset()

    def reset(self):
        self._correct = 0
        self._total = 0
        self._y_true = []
        self._y_pred = []
        self._per_class = defaultdict(list)

    def process(self, logits, labels):
        pred = logits.argmax(dim=1)
        matches = pred.eq(labels).int()
        self._correct += int(matches.sum().item())
        self._total += labels.shape[0]
        self._y_true.extend(labels.tolist())
        self._y_pred.extend(pred.tolist())
        if self.per_class_result:
            for label, match in zip(labels.tolist(), matches.tolist()):
                self._per_class[label].append(match)

    def evaluate(self):
        acc = 100.0 * self._correct / self._total
        results = OrderedDict(accuracy=acc, error=100.0 - acc, macro_f1=macro_f1(self._y_true, self._y_pred),
                              total=self._total, correct=self._correct)
        print(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.2f}%\n"
            f"* error: {100.0 - acc:.2f}%\n"
            f"* macro_f1: {results['macro_f1']:.2f}%"
        )
        if self.per_class_result:
            print("=> per-class result")
            accs = []
            for label in sorted(self._per_class):
                res = self._per_class[label]
                class_acc = 100.0 * sum(res) / len(res)
                accs.append(class_acc)
                print(f"* class: {label} ({self.lab2cname.get(label, '')})\t"
                      f"total: {len(res):,}\tcorrect: {sum(res):,}\tacc: {class_acc:.2f}%")
            results["perclass_accuracy"] = float(np.mean(accs))
            print(f"* average: {results['perclass_accuracy']:.2f}%")
        return results
