"""Export: merge the adapter into a 16-bit base; write a Hugging Face folder, an Ollama Modelfile or a GGUF file;
prove the template round trip; write the model card. Imports infer (opening the run) and everything below."""
