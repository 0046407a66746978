"""Knowledge construction (SemPT's KC module, spec §1): attribute vocabularies and descriptions from an LLM.

`generate_attributes(settings)` builds an `AttributeFile` for `data.dataset` with `llm.strategy`;
`write_attribute_file` writes it atomically; `load_attribute_file` reads and validates one. The embedding
half (T_atr) is `sempt_cli.pipeline.attributes.embed_attributes`. Importing this package loads no torch.
"""

from __future__ import annotations

from sempt_cli.knowledge.generate import (
    GenerationError,
    KnowledgeBuilder,
    Plan,
    all_classnames,
    check_against_data,
    default_output,
    demo_attribute_file,
    generate_attributes,
    make_client,
    names_file,
    plan_requests,
    same_generation,
    write_attribute_file,
)
from sempt_cli.knowledge.llm import ChatRequest, EndpointError, LLMClient, RequestCache
from sempt_cli.knowledge.schema import AttributeFile, json_schema, load_attribute_file, write_json_schema

__all__ = [
    "AttributeFile",
    "ChatRequest",
    "EndpointError",
    "GenerationError",
    "KnowledgeBuilder",
    "LLMClient",
    "Plan",
    "RequestCache",
    "all_classnames",
    "check_against_data",
    "default_output",
    "demo_attribute_file",
    "generate_attributes",
    "json_schema",
    "load_attribute_file",
    "make_client",
    "names_file",
    "plan_requests",
    "same_generation",
    "write_attribute_file",
    "write_json_schema",
]
