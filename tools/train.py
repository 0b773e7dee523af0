# Train with flora_mm: mmdet's train.py flags; mmdet / mmseg / mmrotate picked by default_scope.
# CPU-only machines: distributed launches use gloo automatically (see flora_mm/apis/launch.py).
from flora_mm.apis import run_train

if __name__ == '__main__':
    run_train()
