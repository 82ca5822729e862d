# Classification: the table of predicted classes and the confusion matrix (per-image
# prediction, post-processing and evaluation are the generic rules).


if CFG["workflow"] == "classification":

    rule classes_table:
        input:
            expand(f"{OUT}/{TASK.output_dir}/{{image}}{TASK.output_suffix}", image=TEST_IDS),
        output:
            f"{OUT}/classes.csv",
        log:
            f"{OUT}/logs/classes_table.log",
        run:
            stages.run("classes_table", list(input), output[0], CFG, log=log[0])

    rule confusion_matrix:
        input:
            f"{OUT}/metrics.csv",
        output:
            csv=f"{OUT}/confusion_matrix.csv",
            png=f"{OUT}/confusion_matrix.png",
        params:
            classes=CFG["targets"]["classification"]["classes"],
        log:
            f"{OUT}/logs/confusion_matrix.log",
        run:
            stages.run("confusion_matrix", input[0], output.csv, output.png, CFG, log=log[0])
