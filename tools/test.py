# Test (and evaluate) a checkpoint, full or adapter-only, with flora_mm: mmdet's test.py flags.
from flora_mm.apis import run_test

if __name__ == '__main__':
    run_test()
