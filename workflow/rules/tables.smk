# Experiment-level tables a workflow adds (its task's outputs_tables and metrics_tables), e.g.
# classification's classes.csv and confusion matrix.


if TASK.outputs_tables and TEST_IDS:

    rule outputs_tables:
        input:
            [W.output(i) for i in W.unbatched],
            W.markers("postprocess"),
        output:
            **{name: report(f"{OUT}/{path}", caption="../report/tables.rst", category="3. Metrics")
               for name, path in TASK.outputs_tables.items()},
        log:
            f"{OUT}/logs/outputs_tables.log",
        run:
            stages.outputs_tables(outputs=[W.output(i) for i in TEST_IDS],
                                  paths=dict(output.items()), task=TASK, log=log[0])


if TASK.metrics_tables and SCORED_IDS:

    rule metrics_tables:
        input:
            f"{OUT}/metrics.csv",
        output:
            **{name: report(f"{OUT}/{path}", caption="../report/tables.rst", category="3. Metrics")
               for name, path in TASK.metrics_tables.items()},
        params:
            classes=smk.targets_key(CFG),
        log:
            f"{OUT}/logs/metrics_tables.log",
        run:
            stages.metrics_tables(metrics=input[0], paths=dict(output.items()), task=TASK, log=log[0])
