# Inputs: optional demo data, normalization (per image or from dataset statistics), targets.


if CFG["data"]["demo"]:

    rule demo_data:
        output:
            # once each: an image may be its own target (self-supervised denoising)
            list(dict.fromkeys([s.image for s in PLAN.ds.all()] +
                               [f for s in PLAN.ds.all() if TASK.labels_are_files and s.label
                                for f in [s.label, *TASK.label_companions(s.label)]])),
        params:
            demo=smk.rerun_key(CFG["data"]["demo"]),
            ndim=CFG["ndim"],
            seed=CFG["seed"],
        log:
            f"{OUT}/logs/demo_data.log",
        run:
            stages.demo_data(task=TASK, log=log[0])


rule normalize_stats_inputs:  # one file, not thousands, as the input of normalize_stats
    input:
        images=[W.train_samples[i].image for i in TRAIN_IDS],
    output:
        f"{OUT}/normalize/inputs.json",
    log:
        f"{OUT}/logs/normalize_stats_inputs.log",
    localrule: True
    run:
        stages.manifest(files={"images": list(input.images)}, out=output[0], log=log[0])


rule normalize_stats:
    input:
        rules.normalize_stats_inputs.output[0],
    output:
        f"{OUT}/normalize/stats.json",
    params:
        normalize=NORMALIZE_KEY,
    log:
        f"{OUT}/logs/normalize_stats.log",
    benchmark:
        f"{OUT}/benchmarks/normalize_stats.tsv"
    run:
        stages.normalize_stats(manifest=input[0], out=output[0], ndim=CFG["ndim"], axes=AXES,
                               normalize=CFG["normalize"], memory_gb=CFG["train"]["memory_gb"], log=log[0])


# One job per training/validation image makes both what training reads: the normalized image
# and the targets. Either change retrains anyway, so one job loses no rerun precision and keeps
# the plan of large datasets small (docs/architecture.md, "planning cost").
rule prepare:
    input:
        image=W.train_image_of,
        label=W.train_label_of,
        companions=W.train_companions_of,
        stats=STATS_INPUT,
    output:
        image=directory(f"{OUT}/normalized/{{image}}.zarr"),
        targets=directory(f"{OUT}/targets/{{image}}.zarr"),
    params:
        normalize=NORMALIZE_KEY,
        axes=AXES,
        workflow=CFG["workflow"],
        targets=smk.targets_key(CFG),
        halo=str(TASK.target_halo()),
        object_diameter=CFG["train"]["object_diameter"],
        **({} if TASK.labels_are_files else {"label": W.train_label_value}),
    log:
        f"{OUT}/logs/prepare/{{image}}.log",
    priority: 50
    run:
        stages.prepare(**W.prepare(input, output, wildcards), log=log[0])
