"""Pick particles: ``python predict.py input=PATH output_dir=DIR [ckpt_path=CKPT]``.

A thin Hydra entry point, the same as the installed ``cryoparticle-pick``
(:func:`cryoparticle.cli.pick`): composes ``cryoparticle/conf/predict.yaml`` and runs
:func:`cryoparticle.picking.predict.run`. Exit code 0: every micrograph picked (or already
done); 1: some micrographs failed (each reported on one line); 2: a configuration, checkpoint
or input problem (one line, nothing written).
"""

from cryoparticle.cli import pick as main

if __name__ == "__main__":
    main()
