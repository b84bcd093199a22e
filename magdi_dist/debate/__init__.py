"""Teacher discussions generated: agents on OpenAI-compatible endpoints discuss benchmark questions
(Du et al.'s debate or ReConcile), sharded over Ray with bounded, retried requests and a resumable
turn log; graded MAGs come out in the generic JSONL that ``preprocess`` reads. The workflow is
``magdi_dist.debate.run.run_debate(load_debate_config(...))`` (``magdi-dist debate``). Nothing is
imported here, so importing the package stays cheap."""
