# The run report: a self-contained HTML page of the results (biapipe.workflow.report), made
# last; `snakemake --report report.html` after a run gathers the files flagged with report()
# (this page among them) into Snakemake's own report.


rule report:
    input:
        smk.report_inputs(PLAN),
    output:
        html=report(REPORT["html"], caption="../report/report_html.rst", category="1. Run report"),
        gallery=report(directory(REPORT["gallery"]), patterns=["{name}.png"], caption="../report/gallery.rst",
                       category="2. Gallery"),
        config=REPORT["config"],
    params:
        report=smk.rerun_key(CFG["report"]),
    log:
        f"{OUT}/logs/report.log",
    localrule: True
    run:
        stages.report(**W.report(output), log=log[0])
