"""Results: evaluation rows collected across runs (`collect`) and the Markdown/HTML report (`build`)."""
