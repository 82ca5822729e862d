# Post-processing, per-image metrics and the two tables users read first.


rule postprocess:
    input:
        prediction=f"{OUT}/predictions/{{image}}.zarr",
        image=f"{OUT}/normalized/{{image}}.zarr",
        tuning=tuning_input,
    output:
        main=f"{OUT}/{TASK.output_dir}/{{image}}{TASK.output_suffix}",
        **{name: f"{OUT}/{path}" for name, path in TASK.side_outputs.items()},
    params:
        postprocess=CFG["postprocess"],
    log:
        f"{OUT}/logs/postprocess/{{image}}.log",
    benchmark:
        f"{OUT}/benchmarks/postprocess/{{image}}.tsv"
    run:
        stages.run("postprocess", input.prediction, output.main, CFG, input.image, side_outputs(output), log=log[0])


rule evaluate:
    input:
        output=rules.postprocess.output.main,
        label=label_of,
        image=image_of,
    output:
        f"{OUT}/metrics/{{image}}.csv",
    params:
        evaluate=CFG["evaluate"],
        label=label_value,
    log:
        f"{OUT}/logs/evaluate/{{image}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate/{{image}}.tsv"
    run:
        stages.run("evaluate", input.output, label_value(wildcards), output[0], wildcards.image, CFG, input.image, log=log[0])


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
