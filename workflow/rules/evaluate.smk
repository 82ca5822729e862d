# Post-processing with per-image scores, and the tables users read first. Scoring runs in the
# post-processing job, on the output still in memory (docs/architecture.md, "planning cost").
# Images without ground truth get a metrics file with their id only; the tables use the scored ones.


rule postprocess:
    input:
        prediction=f"{OUT}/predictions/{{image}}.zarr",
        image=IMAGE_FOR_POSTPROCESS,
        tuning=TUNING_INPUT,
        label=TEST_LABEL,
        companions=W.companions_of,
    output:
        main=f"{OUT}/{TASK.output_dir}/{{image}}{TASK.output_suffix}",
        metrics=f"{OUT}/metrics/{{image}}.csv",
        **W.side,
    params:
        postprocess=smk.rerun_key(CFG["postprocess"]),
        evaluate=smk.rerun_key(CFG["evaluate"]),
        **W.label_param(),
    wildcard_constraints:
        image=NOT_LARGE,
    log:
        f"{OUT}/logs/postprocess/{{image}}.log",
    run:
        stages.postprocess(**W.postprocess(input, output, wildcards), log=log[0])


if LARGE_IDS:

    # Large images: block by block with bounded memory, in the task's large format (OME-Zarr
    # label volumes; points stay CSV); objects cut by block faces are merged in this job, and
    # the scores are counted block by block against a ground truth that may not fit in memory.
    rule postprocess_large:
        input:
            prediction=f"{OUT}/predictions/{{image}}.zarr",
            blocks=W.block_markers,
            segmented=W.segmented_of,
            image=IMAGE_FOR_POSTPROCESS,
            tuning=TUNING_INPUT,
            label=W.label_of,
        output:
            main=large_output(f"{OUT}/{TASK.output_dir}/{{image}}{TASK.large_output_suffix}"),
            metrics=f"{OUT}/metrics/{{image}}.csv",
            **W.side,
        params:
            postprocess=smk.rerun_key(CFG["postprocess"]),
            evaluate=smk.rerun_key(CFG["evaluate"]),
            memory_gb=CFG["predict"]["memory_gb"],
        wildcard_constraints:
            image=smk.id_regex(LARGE_IDS),
        resources:
            mem_mb=int(CFG["predict"]["memory_gb"] * 1024 * 1.5),
        log:
            f"{OUT}/logs/postprocess/{{image}}.log",
        run:
            stages.postprocess(**W.postprocess(input, output, wildcards), log=log[0])


rule aggregate:
    input:
        [W.metrics(i) for i in W.unbatched if i in W.scored],
        W.markers("postprocess"),
    output:
        metrics=report(f"{OUT}/metrics.csv", caption="../report/metrics.rst", category="3. Metrics"),
        summary=report(f"{OUT}/summary.csv", caption="../report/summary.rst", category="3. Metrics"),
    log:
        f"{OUT}/logs/aggregate.log",
    run:
        stages.aggregate(metrics=[W.metrics(i) for i in SCORED_IDS], out_metrics=output.metrics,
                         out_summary=output.summary, task=TASK, log=log[0])
