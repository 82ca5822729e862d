# Many test images: prediction and post-processing in jobs of a batch of images each
# (predict.batch_images), each image still with its own outputs. Snakemake sees one marker per
# batch job, so the plan grows with batches, not images (docs/architecture.md, "planning cost").


if BATCHES:

    rule predict_batch:
        input:
            model=MODEL,
            images=W.batch_images,
            stats=STATS_INPUT,
        output:
            f"{OUT}/batches/predict/{{batch}}.done",
        params:
            images=W.batch_ids,
            files=W.batch_digest,
            normalize=NORMALIZE_KEY,
            axes=AXES,
            predict=PREDICT_KEY,
            model=MODEL_STAMP,
        threads: CFG["predict"]["threads"]
        resources:
            gpu=1,
        log:
            f"{OUT}/logs/predict/{{batch}}.log",
        run:
            stages.predict_batch(**W.predict_batch(input, output, wildcards, threads), log=log[0])

    rule postprocess_batch:
        input:
            predicted=f"{OUT}/batches/predict/{{batch}}.done",
            images=W.batch_images if TASK.side_outputs else [],
            labels=W.batch_labels,
            tuning=TUNING_INPUT,
        output:
            f"{OUT}/batches/postprocess/{{batch}}.done",
        params:
            images=W.batch_ids,
            files=W.batch_label_digest,
            postprocess=smk.rerun_key(CFG["postprocess"]),
            evaluate=smk.rerun_key(CFG["evaluate"]),
            **W.label_param(batch=True),
        log:
            f"{OUT}/logs/postprocess/{{batch}}.log",
        run:
            stages.postprocess_batch(**W.postprocess_batch(output, wildcards), log=log[0])
