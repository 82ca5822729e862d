# Inputs: optional demo data, normalization (per image or from dataset statistics), targets.


if CFG["data"]["demo"]:

    rule demo_data:
        output:
            [s.image for s in DS.all()],
            [s.label for s in DS.all() if labels_are_files(CFG["workflow"])],
        params:
            demo=CFG["data"]["demo"],
            ndim=CFG["ndim"],
            seed=CFG["seed"],
        log:
            f"{OUT}/logs/demo_data.log",
        run:
            stages.run("demo_data", CFG, log=log[0])


rule normalize_stats_inputs:  # one file, not thousands, as the input of normalize_stats (rules/train.smk)
    input:
        images=[SAMPLES[i].image for i in TRAIN_IDS],
    output:
        f"{OUT}/normalize/inputs.json",
    log:
        f"{OUT}/logs/normalize_stats_inputs.log",
    localrule: True
    run:
        stages.run("manifest", {"images": list(input.images)}, output[0], log=log[0])


rule normalize_stats:
    input:
        rules.normalize_stats_inputs.output[0],
    output:
        f"{OUT}/normalize/stats.json",
    params:
        normalize=CFG["normalize"],
    log:
        f"{OUT}/logs/normalize_stats.log",
    benchmark:
        f"{OUT}/benchmarks/normalize_stats.tsv"
    run:
        stages.run("normalize_stats", input[0], output[0], CFG, log=log[0])


# One job per training/validation image makes both what training reads: the normalized image
# and the targets. Either change retrains anyway, so one job loses no rerun precision and keeps
# the plan of large datasets small (benchmarks/bench_dag.py).
rule prepare:
    input:
        image=image_of,
        label=label_of,
        stats=STATS_INPUT,
    output:
        image=directory(f"{OUT}/normalized/{{image}}.zarr"),
        targets=directory(f"{OUT}/targets/{{image}}.zarr"),
    params:
        normalize=CFG["normalize"],
        axes=CFG["data"]["axes"],
        workflow=CFG["workflow"],
        targets=CFG["targets"],
        **LABEL_PARAM,
    log:
        f"{OUT}/logs/prepare/{{image}}.log",
    priority: 50
    run:
        stages.run("prepare", input.image, label_value(wildcards), output.image, output.targets, CFG, *input.stats, log=log[0])


if FLOAT_TEST_IDS:

    rule check_test_pixels:
        input:
            [SAMPLES[i].image for i in FLOAT_TEST_IDS],
        output:
            PIXEL_CHECK[0],
        log:
            f"{OUT}/logs/check_test_pixels.log",
        priority: 100
        run:
            stages.run("check_pixels", list(input), output[0], CFG, log=log[0])
