# Training: one job per experiment, on a GPU when there is one.


# The training set as one file. Snakemake checks, for every job that needs the model, whether
# the model is among train's own inputs (a list scan), so listing thousands of images on train
# itself makes planning cost (test images x training images); the manifest keeps it linear.
rule train_inputs:
    input:
        train_images=expand(f"{OUT}/normalized/{{image}}.zarr", image=TRAIN_IDS),
        train_targets=expand(f"{OUT}/targets/{{image}}.zarr", image=TRAIN_IDS),
        val_images=expand(f"{OUT}/normalized/{{image}}.zarr", image=VAL_IDS),
        val_targets=expand(f"{OUT}/targets/{{image}}.zarr", image=VAL_IDS),
    output:
        f"{OUT}/model/inputs.json",
    log:
        f"{OUT}/logs/train_inputs.log",
    localrule: True
    run:
        stages.manifest(files=dict(input.items()), out=output[0], log=log[0])


rule train:
    input:
        manifest=rules.train_inputs.output[0],
        stats=STATS_INPUT,
        init=[CFG["train"]["init"]] if CFG["train"]["init"] else [],
    output:
        best=f"{OUT}/model/best.pt",
        last=f"{OUT}/model/last.pt",
        history=report(f"{OUT}/model/history.csv", caption="../report/history.rst", category="4. Training"),
        curve=report(f"{OUT}/model/training_curve.png", caption="../report/training_curve.rst",
                     category="4. Training"),
    params:
        **smk.train_params(CFG),
    threads: CFG["train"]["threads"]
    resources:
        **smk.train_resources(CFG),
    log:
        f"{OUT}/logs/train.log",
    benchmark:
        f"{OUT}/benchmarks/train.tsv"
    conda:
        "../../environment.yml"
    script:
        "../scripts/train.py"


# The model to share or predict with in another run (`model: .../model/model.pt`): best.pt with
# the tuned post-processing thresholds. Its own file, written after tuning: prediction here reads
# best.pt, so re-tuning (a post-processing change) never reruns prediction.
rule package_model:
    input:
        best=f"{OUT}/model/best.pt",
        tuning=TUNING_INPUT,
    output:
        f"{OUT}/model/model.pt",
    log:
        f"{OUT}/logs/package_model.log",
    localrule: True
    run:
        stages.package_model(checkpoint=input.best, tuning=input.tuning[0] if input.tuning else None, out=output[0],
                             log=log[0])


# What automatic planning chose and why (train.plan: auto), written once per plan: nothing
# reads it, so a changed fingerprint that changes no choice reruns this file only; a config that
# writes out the planned values (results/{experiment}/config.yaml) reruns nothing.
rule plan:
    output:
        f"{OUT}/model/plan.json",
    params:
        plan=smk.rerun_key(PLAN.planning.meaning()),
    log:
        f"{OUT}/logs/plan.log",
    localrule: True
    run:
        stages.write_plan(record=PLAN.planning.as_dict(), out=output[0], log=log[0])
