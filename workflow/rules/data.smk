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


rule normalize_stats:
    input:
        [SAMPLES[i].image for i in TRAIN_IDS],
    output:
        f"{OUT}/normalize/stats.json",
    params:
        normalize=CFG["normalize"],
    log:
        f"{OUT}/logs/normalize_stats.log",
    benchmark:
        f"{OUT}/benchmarks/normalize_stats.tsv"
    run:
        stages.run("normalize_stats", list(input), output[0], CFG, log=log[0])


rule normalize:
    input:
        image=image_of,
        stats=stats_input,
    output:
        directory(f"{OUT}/normalized/{{image}}.zarr"),
    params:
        normalize=CFG["normalize"],
        axes=CFG["data"]["axes"],
    log:
        f"{OUT}/logs/normalize/{{image}}.log",
    benchmark:
        f"{OUT}/benchmarks/normalize/{{image}}.tsv"
    priority: 50
    run:
        stages.run("normalize", input.image, output[0], CFG, *input.stats, log=log[0])


rule targets:
    input:
        label=label_of,
        image=image_of,
    output:
        directory(f"{OUT}/targets/{{image}}.zarr"),
    params:
        workflow=CFG["workflow"],
        targets=CFG["targets"],
        label=label_value,
    log:
        f"{OUT}/logs/targets/{{image}}.log",
    benchmark:
        f"{OUT}/benchmarks/targets/{{image}}.tsv"
    priority: 50
    run:
        stages.run("targets", label_value(wildcards), input.image, output[0], CFG, log=log[0])
