"""Editing facts: requests and the undo record, ROME, MEMIT, AlphaEdit, fine-tuning, knowledge neurons,
sequences of edits, evaluation on CounterFact and zsRE, ripple effects, generation."""
