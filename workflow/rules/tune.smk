# Post-processing thresholds tuned on the validation images (when the config asks for it).


if TASK.tuning_file():

    rule tune:
        input:
            predictions=expand(f"{OUT}/predictions/{{image}}.zarr", image=VAL_IDS),
            labels=[SAMPLES[i].label for i in VAL_IDS],
        output:
            TASK.tuning_file(),
        params:
            postprocess=CFG["postprocess"],
        log:
            f"{OUT}/logs/tune.log",
        benchmark:
            f"{OUT}/benchmarks/tune.tsv"
        run:
            stages.run("tune", input.predictions, input.labels, output[0], CFG, log=log[0])
