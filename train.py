"""Train a particle picker: ``python train.py [model=deeplabv3] [crf=rnn] [-m sweeps]``.

A thin Hydra entry point, the same as the installed ``cryoparticle-train``
(:func:`cryoparticle.cli.train`): composes ``cryoparticle/conf/train.yaml`` and runs
:mod:`cryoparticle.training`.
"""

from cryoparticle.cli import train as main

if __name__ == "__main__":
    main()
