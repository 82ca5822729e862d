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


rule normalize:
    input:
        image=image_of,
        stats=STATS_INPUT,
    output:
        directory(f"{OUT}/normalized/{{image}}.zarr"),
    params:
        normalize=CFG["normalize"],
        axes=CFG["data"]["axes"],
    log:
        f"{OUT}/logs/normalize/{{image}}.log",
    priority: 50
    run:
        stages.run("normalize", input.image, output[0], CFG, *input.stats, log=log[0])


rule targets:
    input:
        label=label_of,
        image=image_of,  # its header gives the shape points are drawn into
    output:
        directory(f"{OUT}/targets/{{image}}.zarr"),
    params:
        workflow=CFG["workflow"],
        targets=CFG["targets"],
        **LABEL_PARAM,
    log:
        f"{OUT}/logs/targets/{{image}}.log",
    priority: 50
    run:
        stages.run("targets", label_value(wildcards), input.image, output[0], CFG, log=log[0])


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
