"""Chat templates: the file's own template, the built-ins, selection, the sandbox and the errors.

Expected strings were checked against llama.cpp (llama-cpp-python 0.3.36, in a dev-only venv, never a
dependency): the file templates through `llama_cpp.llama_chat_format.Jinja2ChatFormatter` with the
file's template and BOS/EOS texts, the built-ins through the C function `llama_chat_apply_template`
(`llama_cpp.llama_chat_apply_template(None, name, chat, n, add_ass, buf, len)`) with llama.cpp's
template of the same name. llama.cpp's built-ins never write BOS; where ours do (Gemma, Llama 3, as the
official templates do), the expected string is "<BOS text>" + llama.cpp's output.
"""

import json

import pytest

from edgeinfer.errors import EdgeInferError
from edgeinfer.gguf import GGUFFile
from edgeinfer.tokenizer.chat import (
    BUILTIN_TEMPLATES,
    ChatTemplate,
    ChatTemplateError,
    builtin_template,
)

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi. What do you need?"},
    {"role": "user", "content": "Name a prime number."},
]

# Made with llama_cpp.llama_chat_format.Jinja2ChatFormatter(template=<the file's template>,
# bos_token="<|im_start|>", eos_token="<|im_end|>", add_generation_prompt=True)(messages=CONVERSATION).prompt
SMOLLM2_EXPECTED = (
    "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n"
    "<|im_start|>user\nHello!<|im_end|>\n"
    "<|im_start|>assistant\nHi. What do you need?<|im_end|>\n"
    "<|im_start|>user\nName a prime number.<|im_end|>\n"
    "<|im_start|>assistant\n"
)

# Made with llama_cpp.llama_chat_apply_template(None, b"gemma", CONVERSATION, 4, True, buf, len),
# with "<bos>" (the Gemma file's BOS text) put in front.
GEMMA_EXPECTED = (
    "<bos><start_of_turn>user\nYou are a terse assistant.\n\nHello!<end_of_turn>\n"
    "<start_of_turn>model\nHi. What do you need?<end_of_turn>\n"
    "<start_of_turn>user\nName a prime number.<end_of_turn>\n"
    "<start_of_turn>model\n"
)

# name -> (bos, eos, expected rendering of CONVERSATION with add_generation_prompt=True).
# chatml, phi3: llama_chat_apply_template(None, name, ...) exactly. llama3: "<|begin_of_text|>" + its
# output for "llama3". mistral (v0.3's official format, system prompt before the last user message):
# "<s>" + llama.cpp's "mistral-v3" output for [system, user] messages (the one case where both place
# the system prompt alike), extended by hand for the longer conversation. llama2 (the official Llama 2
# chat template, which llama.cpp's built-ins do not reproduce: it writes " reply </s>" where llama.cpp
# writes "reply</s>"): llama.cpp's "llama2-sys-bos" output with those spaces and the leading "<s>".
BUILTIN_EXPECTED = {
    "chatml": ("", "", SMOLLM2_EXPECTED),
    "llama3": (
        "<|begin_of_text|>", "<|eot_id|>",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a terse assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi. What do you need?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nName a prime number.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "phi3": (
        "<s>", "<|endoftext|>",
        "<|system|>\nYou are a terse assistant.<|end|>\n<|user|>\nHello!<|end|>\n"
        "<|assistant|>\nHi. What do you need?<|end|>\n<|user|>\nName a prime number.<|end|>\n<|assistant|>\n",
    ),
    "mistral": (
        "<s>", "</s>",
        "<s>[INST] Hello![/INST] Hi. What do you need?</s>"
        "[INST] You are a terse assistant.\n\nName a prime number.[/INST]",
    ),
    "llama2": (
        "<s>", "</s>",
        "<s>[INST] <<SYS>>\nYou are a terse assistant.\n<</SYS>>\n\nHello! [/INST] Hi. What do you need? </s>"
        "<s>[INST] Name a prime number. [/INST]",
    ),
    # Jinja2ChatFormatter with the template of llama.cpp's models/ggml-vocab-gemma-4.gguf (Gemma 4's
    # official one), bos "<bos>", eos "<eos>" (llama.cpp has no Gemma 4 built-in)
    "gemma4": (
        "<bos>", "<eos>",
        "<bos><|turn>system\nYou are a terse assistant.<turn|>\n<|turn>user\nHello!<turn|>\n"
        "<|turn>model\nHi. What do you need?<turn|>\n<|turn>user\nName a prime number.<turn|>\n"
        "<|turn>model\n<|channel>thought\n<channel|>",
    ),
}


# --- the real files ---------------------------------------------------------------------------------


def test_smollm2_renders_its_own_template(smollm2_path):
    metadata = GGUFFile(smollm2_path).metadata
    tmpl = ChatTemplate.from_metadata(metadata)
    assert tmpl.name == "file"
    assert tmpl.source == metadata["tokenizer.chat_template"]
    assert tmpl.render(CONVERSATION) == SMOLLM2_EXPECTED
    assert tmpl.render(CONVERSATION, add_generation_prompt=False) == SMOLLM2_EXPECTED.removesuffix(
        "<|im_start|>assistant\n")


def test_smollm2_template_adds_its_default_system_prompt(smollm2_path):
    tmpl = ChatTemplate.from_metadata(GGUFFile(smollm2_path).metadata)
    # Jinja2ChatFormatter, as above, with only the user message.
    assert tmpl.render([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_gemma3_file_gets_the_gemma_builtin(gemma3_path):
    metadata = GGUFFile(gemma3_path).metadata
    assert "tokenizer.chat_template" not in metadata
    tmpl = ChatTemplate.from_metadata(metadata)
    assert tmpl.name == "gemma"
    assert tmpl.source == builtin_template("gemma")
    assert (tmpl.bos_token, tmpl.eos_token) == ("<bos>", "<eos>")
    text = tmpl.render(CONVERSATION)
    assert text == GEMMA_EXPECTED
    # The text carries BOS already: the caller must not add a second one.
    assert tmpl.starts_with_bos(text)
    assert tmpl.strip_bos(text) == GEMMA_EXPECTED.removeprefix("<bos>")


# --- built-ins --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN_EXPECTED))
def test_builtin_matches_reference(name):
    bos, eos, expected = BUILTIN_EXPECTED[name]
    tmpl = ChatTemplate(builtin_template(name), name, bos_token=bos, eos_token=eos)
    assert tmpl.render(CONVERSATION) == expected


def test_mistral_builtin_matches_llama_cpp_for_one_turn():
    # "<s>" + llama_chat_apply_template(None, b"mistral-v3", [system, user], 2, True, buf, len).
    tmpl = ChatTemplate(builtin_template("mistral"), "mistral", bos_token="<s>", eos_token="</s>")
    assert tmpl.render(CONVERSATION[:2]) == "<s>[INST] You are a terse assistant.\n\nHello![/INST]"


def test_every_builtin_is_tested():
    assert set(BUILTIN_EXPECTED) | {"gemma"} == set(BUILTIN_TEMPLATES)


def test_gemma_builtin_without_system_and_with_whitespace():
    tmpl = ChatTemplate(builtin_template("gemma"), "gemma", bos_token="<bos>")
    # llama_chat_apply_template(None, b"gemma", ...) trims contents as the official template does.
    assert tmpl.render([{"role": "user", "content": "  Hi \n"}]) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n")
    assert tmpl.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False) == (
        "<bos><start_of_turn>user\nHi<end_of_turn>\n")


def test_gemma_builtin_refuses_roles_out_of_turn():
    tmpl = ChatTemplate(builtin_template("gemma"), "gemma")
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
        tmpl.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_unknown_builtin():
    with pytest.raises(ChatTemplateError, match="no built-in chat template named 'vicuna'"):
        builtin_template("vicuna")


# --- selection --------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens, arch, expected", [
    (["<start_of_turn>", "<end_of_turn>"], "llama", "gemma"),
    (["<|turn>", "<turn|>", "<start_of_turn>"], "gemma4", "gemma4"),
    (["<s>", "</s>"], "gemma4", "gemma4"),
    (["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "llama", "llama3"),
    (["<|im_start|>", "<|im_end|>"], "llama", "chatml"),
    (["[INST]", "[/INST]"], "llama", "mistral"),
    (["<|assistant|>", "<|end|>"], "phi3", "phi3"),
    (["<s>", "</s>"], "gemma2", "gemma"),
    (["<|endoftext|>"], "qwen2", "chatml"),
    (["<|endoftext|>"], "gpt2", "chatml"),
])
def test_builtin_selection(tokens, arch, expected):
    metadata = {"general.architecture": arch, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens}
    assert ChatTemplate.from_metadata(metadata).name == expected
    tmpl = ChatTemplate.from_metadata({"general.architecture": arch}, token_texts=set(tokens))
    assert tmpl.name == expected


def test_sentencepiece_llama_without_chat_tokens_gets_llama2():
    metadata = {"general.architecture": "llama", "tokenizer.ggml.model": "llama",
                "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"], "tokenizer.ggml.bos_token_id": 1,
                "tokenizer.ggml.eos_token_id": 2}
    tmpl = ChatTemplate.from_metadata(metadata)
    assert (tmpl.name, tmpl.bos_token, tmpl.eos_token) == ("llama2", "<s>", "</s>")


def test_file_template_wins_and_explicit_tokens_win():
    metadata = {"tokenizer.chat_template": "{{ bos_token }}|{{ eos_token }}",
                "tokenizer.ggml.tokens": ["<a>", "<b>"],
                "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1}
    assert ChatTemplate.from_metadata(metadata, token_texts={"<start_of_turn>"}).render([]) == "<a>|<b>"
    assert ChatTemplate.from_metadata(metadata, bos_token="B", eos_token="E").render([]) == "B|E"


# --- what templates can use -------------------------------------------------------------------------


def render(source, messages=(), **kwargs):
    return ChatTemplate(source).render(list(messages), **kwargs)


def test_tojson_keeps_unicode_and_indents():
    tools = [{"name": "météo", "parameters": {"city": "string"}}]
    assert render("{{ tools | tojson }}", tools=tools) == json.dumps(tools, ensure_ascii=False)
    indented = json.dumps(tools, ensure_ascii=False, indent=2)
    assert render("{{ tools | tojson(indent=2) }}", tools=tools) == indented
    assert render("{{ '<x>' | tojson }}") == '"<x>"'  # not HTML-escaped, unlike Jinja's own tojson


def test_context_variables_and_extra_kwargs():
    src = "{{ add_generation_prompt }} {{ tools is none }} {{ messages | length }} {{ custom }}"
    assert render(src, [{"role": "user", "content": "x"}], custom=7) == "True True 1 7"
    assert render(src, add_generation_prompt=False, custom="c") == "False True 0 c"


def test_strftime_now():
    assert len(render("{{ strftime_now('%Y-%m-%d') }}")) == 10


def test_trim_blocks_lstrip_blocks_generation_tag_and_loop_controls():
    src = """
    {% for m in messages %}
        {% if loop.index0 == 1 %}{% break %}{% endif %}
{% generation %}{{ m['content'] }}{% endgeneration %}
    {% endfor %}
"""
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert render(src, msgs) == "\na"  # without trim_blocks and lstrip_blocks: indents and newlines


def test_raise_exception_carries_the_templates_message():
    with pytest.raises(ChatTemplateError, match="System role not supported") as info:
        render("{{ raise_exception('System role not supported') }}")
    assert isinstance(info.value, EdgeInferError) and isinstance(info.value, ValueError)


# --- the sandbox ------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__ }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ raise_exception.__globals__ }}",
    "{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}",
    "{% set _ = messages[0].update({'role': 'x'}) %}",
])
def test_sandbox_refuses_escapes_and_mutation(source):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(ChatTemplateError, match="sandbox forbids"):
        render(source, msgs)
    assert msgs == [{"role": "user", "content": "hi"}]


# --- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("messages, message", [
    ("hello", "must be a list"),
    ({"role": "user", "content": "hi"}, "must be a list"),
    ([["user", "hi"]], "message 0 is a list"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user"}],
     "message 2 has no 'content'"),
    ([{"content": "hi"}], "message 0 has no 'role'"),
    ([{"role": 1, "content": "hi"}], "'role' of type int"),
    ([{"role": "user", "content": None}], "'content' of type NoneType"),
    ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "'content' of type list"),
])
def test_bad_messages(messages, message):
    tmpl = ChatTemplate(builtin_template("chatml"), "chatml")
    with pytest.raises(ChatTemplateError, match=message):
        tmpl.render(messages)


def test_tool_call_message_may_have_no_content():
    msgs = [{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]}]
    assert render("{{ messages[0].tool_calls[0].function.name }}", msgs) == "f"


@pytest.mark.parametrize("source, problem", [
    ("{% for m in messages %}{{ m }}", "line 1"),
    ("{{ messages[0] ", "line 1"),
    ("hi\n{% if x %}", "line 2"),
    ("{% frobnicate %}", "frobnicate"),
])
def test_syntax_errors(source, problem):
    with pytest.raises(ChatTemplateError, match="not valid Jinja") as info:
        ChatTemplate(source)
    assert problem in str(info.value)


def test_broken_file_template_is_reported_at_load():
    with pytest.raises(ChatTemplateError, match="the file chat template is not valid Jinja"):
        ChatTemplate.from_metadata({"tokenizer.chat_template": "{% if %}"})


def test_runtime_failure_is_a_chat_template_error():
    # SmolLM2-style concatenation with a missing key: jinja's Undefined cannot be added to a string.
    with pytest.raises(ChatTemplateError, match="failed on these messages"):
        render("{{ messages[0]['name'] + 'x' }}", [{"role": "user", "content": "hi"}])
