# Post-processing with per-image scores, and the two tables users read first.
# Scoring runs in the post-processing job, on the output still in memory: a separate
# evaluate job per image would add a third of the jobs Snakemake has to plan for large
# datasets (benchmarks/bench_dag.py). Images without ground truth get a metrics file with
# their id only; the tables use the scored ones.


rule postprocess:
    input:
        prediction=f"{OUT}/predictions/{{image}}.zarr",
        image=IMAGE_FOR_POSTPROCESS,
        tuning=TUNING_INPUT,
        label=TEST_LABEL,
    output:
        main=f"{OUT}/{TASK.output_dir}/{{image}}{TASK.output_suffix}",
        metrics=f"{OUT}/metrics/{{image}}.csv",
        **{name: f"{OUT}/{path}" for name, path in TASK.side_outputs.items()},
    params:
        postprocess=CFG["postprocess"],
        evaluate=CFG["evaluate"],
        **LABEL_PARAM,
    wildcard_constraints:
        image=NOT_LARGE,
    log:
        f"{OUT}/logs/postprocess/{{image}}.log",
    run:
        stages.run("postprocess", *postprocess_args(input, output, wildcards), log=log[0])


if LARGE_IDS:

    # Large images: block by block with bounded memory, into OME-Zarr (points stay CSV);
    # instance labels cut by block faces are merged into one id in this same job, and the
    # scores are counted block by block against a ground truth that may not fit in memory.
    rule postprocess_large:
        input:
            prediction=f"{OUT}/predictions/{{image}}.zarr",
            blocks=block_markers,
            segmented=segmented_of,
            image=IMAGE_FOR_POSTPROCESS,
            tuning=TUNING_INPUT,
            label=label_of,
        output:
            main=directory(f"{OUT}/{TASK.output_dir}/{{image}}{LARGE_SUFFIX}") if LARGE_SUFFIX.endswith(".zarr") else f"{OUT}/{TASK.output_dir}/{{image}}{LARGE_SUFFIX}",
            metrics=f"{OUT}/metrics/{{image}}.csv",
            **{name: f"{OUT}/{path}" for name, path in TASK.side_outputs.items()},
        params:
            postprocess=CFG["postprocess"],
            evaluate=CFG["evaluate"],
            memory_gb=CFG["predict"]["memory_gb"],
        wildcard_constraints:
            image=_id_regex(LARGE_IDS),
        resources:
            mem_mb=int(CFG["predict"]["memory_gb"] * 1024 * 1.5),
        log:
            f"{OUT}/logs/postprocess/{{image}}.log",
        run:
            stages.run("postprocess", *postprocess_args(input, output, wildcards), segmented_args(input), log=log[0])


rule aggregate:
    input:
        expand(f"{OUT}/metrics/{{image}}.csv", image=SCORED_IDS),
    output:
        metrics=f"{OUT}/metrics.csv",
        summary=f"{OUT}/summary.csv",
    log:
        f"{OUT}/logs/aggregate.log",
    run:
        stages.run("aggregate", list(input), output.metrics, output.summary, CFG, log=log[0])
